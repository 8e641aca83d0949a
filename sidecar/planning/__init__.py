"""Before deploying: what a policy costs and how it behaves, computed and simulated."""
