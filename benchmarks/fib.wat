;; Recursive Fibonacci: call-heavy (one call per 4-12 instructions), no memory.
;; Instruction count (see interp_speed.py): a call with n < 2 executes 5 counted instructions,
;; a call with n >= 2 executes 13; fib(n) makes F(n+1) leaf calls and F(n+1) - 1 inner calls.
(module
  (func $fib (export "fib") (param $n i32) (result i32)
    local.get $n
    i32.const 2
    i32.lt_u
    if (result i32)
      local.get $n
    else
      local.get $n
      i32.const 1
      i32.sub
      call $fib
      local.get $n
      i32.const 2
      i32.sub
      call $fib
      i32.add
    end))
