"""The interop suite: our programs against genuine upstream albatross v2.7.2."""
