"""Attribution methods composed from capture, store and scoring (DDA, ...)."""
