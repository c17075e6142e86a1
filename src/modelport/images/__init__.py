"""Image uploads classified in the background, with results kept, listed, corrected, deleted."""
