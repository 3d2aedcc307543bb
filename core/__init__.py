"""The bottom layer: plain types and settings that every other package reads.

Nothing here imports another llmgw package (tests/test_layers.py holds it so): usage events and
tokens, windows, spend keys, the budget model, principals, config records, capture policy,
settings and the log format."""
