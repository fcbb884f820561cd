"""Where models and data come from: the zoo, user factories, data sources."""
