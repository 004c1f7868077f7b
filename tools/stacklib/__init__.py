"""Local stack for warmer's demo and functional tests.

Everything here runs with the system's python3 and the standard library
only, because it is what installs the rest.
"""
