"""Scale-out: two ``serve`` processes behind nginx, sharing PostgreSQL and Redis."""
