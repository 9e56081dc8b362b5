-- memory:// only (vecna_async/memory.py puts it before _lib.lua): fakeredis's Lua has no
-- cmsgpack library, so this stands in for the one function the scripts use, cmsgpack.unpack.
-- It decodes the whole format but extension types; a local, as scripts may set no global.
local cmsgpack
do
  local byte, sub, ldexp = string.byte, string.sub, math.ldexp
  local function uint(s, i, n)
    local v = 0
    for k = i, i + n - 1 do
      v = v * 256 + byte(s, k)
    end
    return v
  end
  local function sint(s, i, n) -- the first byte signed, so that no step leaves 2^53
    local v = byte(s, i)
    if v >= 128 then
      v = v - 256
    end
    for k = i + 1, i + n - 1 do
      v = v * 256 + byte(s, k)
    end
    return v
  end
  local function float(s, i, n)
    local b1, b2 = byte(s, i, i + 1)
    local sign = b1 >= 128 and -1 or 1
    local ebits, mbits, bias, exp, mant
    if n == 4 then
      exp = (b1 % 128) * 2 + math.floor(b2 / 128)
      mant = uint(s, i + 1, 3) % 8388608
      ebits, mbits, bias = 255, 23, 127
    else
      exp = (b1 % 128) * 16 + math.floor(b2 / 16)
      mant = (b2 % 16) * 2 ^ 48 + uint(s, i + 2, 6)
      ebits, mbits, bias = 2047, 52, 1023
    end
    if exp == 0 then
      return sign * ldexp(mant, 1 - bias - mbits)
    elseif exp == ebits then
      return mant == 0 and sign * math.huge or 0 / 0
    end
    return sign * ldexp(mant + 2 ^ mbits, exp - bias - mbits)
  end
  -- the byte that starts an integer or a string (str, bin) -> how many bytes its value or
  -- length takes
  local UINT = { [0xcc] = 1, [0xcd] = 2, [0xce] = 4, [0xcf] = 8 }
  local SINT = { [0xd0] = 1, [0xd1] = 2, [0xd2] = 4, [0xd3] = 8 }
  local STR = { [0xc4] = 1, [0xc5] = 2, [0xc6] = 4, [0xd9] = 1, [0xda] = 2, [0xdb] = 4 }
  local decode
  local function items(s, i, count, map)
    local t = {}
    for k = 1, count do
      local key, value
      if map then
        key, i = decode(s, i)
      else
        key = k
      end
      value, i = decode(s, i)
      if key ~= nil then
        t[key] = value
      end
    end
    return t, i
  end
  decode = function(s, i)
    local b = byte(s, i)
    if b < 0x80 then return b, i + 1 end
    if b >= 0xe0 then return b - 256, i + 1 end
    if b < 0x90 then return items(s, i + 1, b - 0x80, true) end
    if b < 0xa0 then return items(s, i + 1, b - 0x90, false) end
    if b < 0xc0 then return sub(s, i + 1, i + b - 0xa0), i + 1 + b - 0xa0 end
    if b == 0xc0 then return nil, i + 1 end
    if b == 0xc2 then return false, i + 1 end
    if b == 0xc3 then return true, i + 1 end
    if b == 0xca then return float(s, i + 1, 4), i + 5 end
    if b == 0xcb then return float(s, i + 1, 8), i + 9 end
    if UINT[b] then return uint(s, i + 1, UINT[b]), i + 1 + UINT[b] end
    if SINT[b] then return sint(s, i + 1, SINT[b]), i + 1 + SINT[b] end
    if STR[b] then
      local n = uint(s, i + 1, STR[b])
      local at = i + 1 + STR[b]
      return sub(s, at, at + n - 1), at + n
    end
    if b == 0xdc or b == 0xdd then
      local w = b == 0xdc and 2 or 4
      return items(s, i + 1 + w, uint(s, i + 1, w), false)
    end
    if b == 0xde or b == 0xdf then
      local w = b == 0xde and 2 or 4
      return items(s, i + 1 + w, uint(s, i + 1, w), true)
    end
    error('msgpack: unsupported type byte ' .. b)
  end
  cmsgpack = {
    unpack = function(s)
      return (decode(s, 1))
    end,
  }
end
