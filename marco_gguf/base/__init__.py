"""What every room shares: typed errors, progress events, file safety, typed JSON fields, machine facts. Imports nothing of ours."""
