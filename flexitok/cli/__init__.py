"""Command line interface (``flexitok``)."""
