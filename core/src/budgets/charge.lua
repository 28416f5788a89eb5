-- Sluice budget charge: the one step that adds real spend to a budget's Redis counter.
-- Included at the top of the worker's settlement (worker/src/limits/settle.lua) and of
-- the charge of native batch results (core/src/budgets/charge_all.lua).
--
-- Adds `amount` USD to the `spent` counter of a budget whose period is `period` ms (the
-- period runs from its first charge). A budget whose `mark` (seeded) is missing lost its
-- counters: they are rebuilt from the ledger, which holds this cost already, so adding it
-- here too would count it twice.
local function charge_spent(spent, mark, amount, period)
  if amount > 0 and redis.call('EXISTS', mark) == 1 then
    redis.call('SET', spent, 0, 'PX', period, 'NX')
    redis.call('INCRBYFLOAT', spent, amount)
  end
end
