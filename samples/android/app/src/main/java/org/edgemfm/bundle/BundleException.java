package org.edgemfm.bundle;

/** A bundle this runtime cannot use: the message names the bad value and, where known, the allowed ones. */
public class BundleException extends RuntimeException {
    public BundleException(String message) {
        super(message);
    }

    public BundleException(String message, Throwable cause) {
        super(message, cause);
    }
}
