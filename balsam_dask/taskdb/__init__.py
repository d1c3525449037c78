"""The task database's pure parts: apps, task fields, submitted rows, task files (the store side is in store/)."""
