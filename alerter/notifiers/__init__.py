"""One notifier per channel behind one small protocol; each config model sits beside its notifier."""
