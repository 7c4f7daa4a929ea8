"""``quantroute tune``: replay logged traffic under candidate policies, report the Pareto set,
write the chosen policy as a config fragment."""
