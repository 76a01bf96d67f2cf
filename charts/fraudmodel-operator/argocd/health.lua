-- Argo CD health check for serving.riskml.io/FraudModel.
-- Install under resource.customizations.health.serving.riskml.io_FraudModel in argocd-cm
-- (see docs/gitops.md). Lua 5.1 (gopher-lua): no goto, no integer division. Argo CD opens only
-- the base, table and package libraries for health checks: no string.*, math.*, os.*.
--
--   status not yet observed (observedGeneration < generation) -> Progressing
--   phase Paused                                              -> Suspended
--   phase RolledBack or Failed, or condition Degraded=True    -> Degraded
--   phase Progressing, Pending or Shadow                      -> Progressing
--   phase Ready with condition Ready=True                     -> Healthy
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function nonempty(value)
  return value ~= nil and value ~= ""
end

local function first(...)
  for i = 1, select("#", ...) do
    local value = select(i, ...)
    if nonempty(value) then
      return value
    end
  end
  return nil
end

local function describe(c)
  if c == nil then
    return nil
  end
  if nonempty(c.reason) and nonempty(c.message) then
    return c.reason .. ": " .. c.message
  end
  return first(c.message, c.reason)
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
local ready = condition(status, "Ready")
local progressing = condition(status, "Progressing")
local degraded = condition(status, "Degraded")

if phase == "Paused" then
  hs.status = "Suspended"
  hs.message = first(status.message, describe(progressing), "Rollout paused")
  return hs
end

if phase == "RolledBack" or phase == "Failed" or (degraded ~= nil and degraded.status == "True") then
  hs.status = "Degraded"
  local fallback = "FraudModel is " .. (phase or "degraded")
  if degraded ~= nil and degraded.status == "True" then
    hs.message = first(describe(degraded), status.message, fallback)
  else
    hs.message = first(status.message, fallback)
  end
  return hs
end

if phase == "Shadow" then
  hs.status = "Progressing"
  local version = status.shadow and status.shadow.version or "new version"
  hs.message = "Shadow " .. version .. ": " .. first(status.message, "scoring mirrored traffic")
  return hs
end

if phase == "Progressing" or phase == "Pending" or phase == nil then
  hs.status = "Progressing"
  local message = first(describe(progressing), status.message)
  if message == nil then
    if status.canary ~= nil and status.canary.weight ~= nil then
      message = "Canary at " .. tostring(status.canary.weight) .. "%"
    else
      message = "Waiting for the operator"
    end
  end
  hs.message = message
  return hs
end

if phase == "Ready" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = first(status.message, describe(ready), "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = first(describe(ready), status.message, "Waiting for Ready")
return hs
