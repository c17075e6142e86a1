"""Models, versions, aliases and the artifact store behind them."""
