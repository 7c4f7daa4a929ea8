"""The FastAPI application: factory, routes, and the one place errors become HTTP."""
