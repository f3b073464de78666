"""The network engine (host<->DPU channel, Arrow Flight endpoint).

Nothing is public here yet.
"""
