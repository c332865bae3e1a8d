"""The engine: everything that turns chat messages into a stream of tokens.

Imported by front ends only through `contract` (torch-free); the web process never imports torch.
"""
