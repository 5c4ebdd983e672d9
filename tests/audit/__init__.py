"""(A package: pytest imports its modules under their dotted names, see tests/__init__.py.)"""
