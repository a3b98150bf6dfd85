"""The agent side of sealab: the command line, and (later) the research loop that proposes commits.

It may import `executor`; `executor` never imports it.
"""
