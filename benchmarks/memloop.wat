;; Linear-memory loop: `reps` times, fill an i32 array of `n` elements (a[i] = i * r + 1)
;; and add all of it to a running sum. Loads, stores, locals and branches; one call in total.
;; Instruction count (see interp_speed.py): 5 + reps * (21 + 34 * n).
(module
  (memory (export "memory") 1)
  (func (export "run") (param $n i32) (param $reps i32) (result i32)
    (local $i i32) (local $sum i32) (local $r i32)
    (block $done
      (loop $outer
        ;; 4: if r >= reps: done
        local.get $r
        local.get $reps
        i32.ge_u
        br_if $done
        ;; 2: i = 0
        i32.const 0
        local.set $i
        (block $fill_done
          (loop $fill
            ;; 4: if i >= n: break
            local.get $i
            local.get $n
            i32.ge_u
            br_if $fill_done
            ;; 9: a[i] = i * r + 1
            local.get $i
            i32.const 2
            i32.shl
            local.get $i
            local.get $r
            i32.mul
            i32.const 1
            i32.add
            i32.store
            ;; 4: i += 1
            local.get $i
            i32.const 1
            i32.add
            local.set $i
            ;; 1
            br $fill))
        ;; 2: i = 0
        i32.const 0
        local.set $i
        (block $sum_done
          (loop $sum_loop
            ;; 4: if i >= n: break
            local.get $i
            local.get $n
            i32.ge_u
            br_if $sum_done
            ;; 7: sum += a[i]
            local.get $sum
            local.get $i
            i32.const 2
            i32.shl
            i32.load
            i32.add
            local.set $sum
            ;; 4: i += 1
            local.get $i
            i32.const 1
            i32.add
            local.set $i
            ;; 1
            br $sum_loop))
        ;; 4: r += 1
        local.get $r
        i32.const 1
        i32.add
        local.set $r
        ;; 1
        br $outer))
    ;; 1
    local.get $sum))
