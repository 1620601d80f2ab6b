"""Load generation and benchmark reports: `backline bench serve`."""
