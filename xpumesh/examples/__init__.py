"""Small programs to run on the mesh (standard library only, so they run as files anywhere)."""
