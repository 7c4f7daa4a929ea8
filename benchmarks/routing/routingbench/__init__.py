"""quantroute routing-policy benchmark: trace, policies, fleet/gateway processes, replay, report."""
