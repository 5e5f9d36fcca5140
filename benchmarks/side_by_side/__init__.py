"""edgemfm against the tools a user would pick instead, one model a module; run.py drives them."""
