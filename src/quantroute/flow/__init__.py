"""Flow control: when every backend that could serve a request is saturated, the request waits
in the gateway by priority (:mod:`.queue`, pure) and is dispatched when a backend has room
(:mod:`.control`, the thin async layer in the request path)."""
