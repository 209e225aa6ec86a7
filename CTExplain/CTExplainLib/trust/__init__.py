"""How far a map and a model can be trusted: faithfulness of maps, sanity of models, domain of inputs."""
