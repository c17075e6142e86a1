"""Database engine, declarative base and migrations. Imports no domain package."""
