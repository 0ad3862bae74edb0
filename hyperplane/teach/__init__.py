"""Teaching connection tracking: `hyperplane trace` (one packet's journey through the reference
model, beside the C core), the pictures drawn from the model's own tables, captures on both
sides of the NAT, and `hyperplane top`."""
