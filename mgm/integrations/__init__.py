"""Adapters that put MGM checkpoints into other projects' tools (evaluation toolkits, serving engines).

Each subpackage imports its toolkit only when that toolkit loads it; nothing here runs at import time.
"""
