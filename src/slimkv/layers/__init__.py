"""nn.Modules that own parameters. They call slimkv.ops for the math and never import slimkv.models."""
