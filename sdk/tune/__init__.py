"""`edgemfm tune`: the verb and what callers import (the search itself is in search.py)."""

from edgemfm.tune.parts import Space
from edgemfm.tune.search import Candidate, HostCheck, Point, Result, choose, plot, table, to_json, tune

__all__ = ["Candidate", "HostCheck", "Point", "Result", "Space", "choose", "plot", "table", "to_json", "tune"]
