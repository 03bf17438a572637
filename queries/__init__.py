"""The query gateway: reads only from the projections, and hosts the command routes beside them."""
