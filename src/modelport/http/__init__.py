"""HTTP plumbing shared by every route: middleware and error responses."""
