package org.edgemfm.bundle;

/** The memory budget cannot hold the bundle: the message gives the bytes needed, by part, and the budget. */
public final class MemoryBudgetException extends BundleException {
    public MemoryBudgetException(String message) {
        super(message);
    }
}
