"""The ``xpumesh`` command: run the mesh, its services, agents and the simulator; talk to the API."""
