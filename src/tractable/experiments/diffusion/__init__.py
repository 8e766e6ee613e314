"""The diffusion family's runner code: rules, command back ends, studies and figures."""
