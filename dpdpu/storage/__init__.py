"""The storage engine (block device, file service, KV-cache tier).

Nothing is public here yet.
"""
