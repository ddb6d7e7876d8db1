"""`make bench`: the product measured against the raw libraries and the peer server (see README.md)."""
