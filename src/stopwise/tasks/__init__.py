"""One vertical slice per application. Tasks import the core; the core never imports a task."""
