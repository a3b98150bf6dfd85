"""The trusted side of sealab: seal a commit into a content-addressed image, verify it, run it, record it.

Imports nothing from `agent` or `policies`.
"""
