"""Budgets: spending limits per team, key or project and UTC calendar period, their alerts
(thresholds and a forecast, to a signed webhook) and, opt-in, enforcement (README, "Budgets")."""
