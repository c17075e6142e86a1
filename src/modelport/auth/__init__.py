"""Accounts, passwords, JWT, API keys and the dependencies that say who is calling."""
