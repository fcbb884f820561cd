"""Stage 2: bits per layer under size and BOPs budgets, solved exactly, and the Pareto frontier."""
