-- Charges spend that had no reservation (native batch results) to budgets.
-- KEYS: per budget: spent string, seeded mark. ARGV: per budget: USD, period ms.
for i = 1, #KEYS / 2 do
  charge_spent(KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]))
end
return 1
