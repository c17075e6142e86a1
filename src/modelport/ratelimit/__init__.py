"""Token buckets per API key, user and client address: in memory, or shared through Redis."""
