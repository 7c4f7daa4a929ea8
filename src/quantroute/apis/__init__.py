"""The client APIs beside chat completions: the Responses API, Anthropic Messages, embeddings,
score and rerank.

``extract`` reads what routing needs from each body (pure); ``conversations`` keeps the
Responses API's conversation state in the gateway (memory or Redis).
"""
