// Command checker judges a recorded history of S3 operations for linearizability with
// Porcupine: every key is a register that PUT, GET, DELETE and conditional PUTs act on.
//
// The history is JSON lines written by run.py, one completed (or given up) operation each:
//
//	{"client": 3, "key": "k07", "op": "put", "value": "c3-41", "call": 1200, "ret": 1830, "result": "ok"}
//
// `op` is get, put, delete, put_if_absent (If-None-Match: *) or put_if_match (If-Match on
// the value `match`). `result` is ok, fail (a definite refusal: 412 for a conditional PUT)
// or unknown (a timeout, a 5xx, a broken connection: the operation may or may not have
// taken effect, as Jepsen counts it). A GET's `read` is the value it returned, "" for
// NoSuchKey; GETs without an answer change nothing and are left out.
//
// It prints one line per key and, for a key that is not linearizable, the shortest prefix
// of its history that already is not, and writes a Porcupine visualization of that key.
// The exit status is 1 when any key is illegal, 2 when the input cannot be read.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

type record struct {
	Client int     `json:"client"`
	Key    string  `json:"key"`
	Op     string  `json:"op"`
	Value  string  `json:"value"`
	Match  string  `json:"match"`
	Call   int64   `json:"call"`
	Ret    *int64  `json:"ret"`
	Result string  `json:"result"`
	Read   *string `json:"read"`
}

type input struct {
	Op    string
	Value string
	Match string
}

type output struct {
	Result string
	Read   string
}

// The register: the value a key holds, "" when it has none.
var model = porcupine.Model{
	Init: func() interface{} { return "" },
	Step: func(state, in, out interface{}) (bool, interface{}) {
		s := state.(string)
		i := in.(input)
		o := out.(output)
		switch i.Op {
		case "get":
			return o.Read == s, s
		case "put":
			return true, i.Value
		case "delete":
			return true, ""
		case "put_if_absent":
			return conditional(s, s == "", i.Value, o.Result)
		case "put_if_match":
			return conditional(s, s == i.Match, i.Value, o.Result)
		}
		return false, s
	},
	DescribeOperation: func(in, out interface{}) string {
		i := in.(input)
		o := out.(output)
		switch i.Op {
		case "get":
			if o.Read == "" {
				return "get() -> none"
			}
			return fmt.Sprintf("get() -> %s", o.Read)
		case "put":
			return fmt.Sprintf("put(%s) %s", i.Value, o.Result)
		case "delete":
			return fmt.Sprintf("delete() %s", o.Result)
		case "put_if_match":
			return fmt.Sprintf("put(%s if %s) %s", i.Value, i.Match, o.Result)
		}
		return fmt.Sprintf("%s(%s) %s", i.Op, i.Value, o.Result)
	},
	DescribeState: func(state interface{}) string {
		if state.(string) == "" {
			return "none"
		}
		return state.(string)
	},
}

// conditional is a compare-and-set: `holds` says whether the condition is true in this state.
func conditional(state string, holds bool, value, result string) (bool, interface{}) {
	switch result {
	case "ok":
		if holds {
			return true, value
		}
		return false, state
	case "fail":
		return !holds, state
	default: // unknown: it took effect exactly when the condition held
		if holds {
			return true, value
		}
		return true, state
	}
}

func toOperation(r record) (porcupine.Operation, bool) {
	out := output{Result: r.Result}
	ret := int64(math.MaxInt64)
	if r.Op == "get" {
		if r.Result != "ok" || r.Read == nil || r.Ret == nil {
			return porcupine.Operation{}, false
		}
		out.Read = *r.Read
	}
	if r.Result != "unknown" && r.Ret != nil {
		ret = *r.Ret
	}
	return porcupine.Operation{
		ClientId: r.Client,
		Input:    input{Op: r.Op, Value: r.Value, Match: r.Match},
		Call:     r.Call,
		Output:   out,
		Return:   ret,
	}, true
}

func main() {
	path := flag.String("history", "history.jsonl", "the recorded history (JSON lines)")
	visual := flag.String("visualize", "", "folder for an HTML visualization of each illegal key")
	timeout := flag.Duration("timeout", 60*time.Second, "how long to search each key's history")
	flag.Parse()

	f, err := os.Open(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot open the history:", err)
		os.Exit(2)
	}
	byKey := map[string][]porcupine.Operation{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			fmt.Fprintf(os.Stderr, "%s:%d: not a history record: %v\n", *path, line, err)
			os.Exit(2)
		}
		if op, ok := toOperation(r); ok {
			byKey[r.Key] = append(byKey[r.Key], op)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "cannot read the history:", err)
		os.Exit(2)
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)

	illegal, unknown, ops := 0, 0, 0
	for _, k := range keys {
		history := byKey[k]
		ops += len(history)
		res, info := porcupine.CheckOperationsVerbose(model, history, *timeout)
		fmt.Printf("key %s: %d operations: %s\n", k, len(history), res)
		switch res {
		case porcupine.Illegal:
			illegal++
			printSmallest(k, history, *timeout)
			if *visual != "" {
				_ = os.MkdirAll(*visual, 0o755)
				file := fmt.Sprintf("%s/%s.html", *visual, k)
				if err := porcupine.VisualizePath(model, info, file); err == nil {
					fmt.Printf("  visualization: %s\n", file)
				}
			}
		case porcupine.Unknown:
			unknown++
		}
	}
	fmt.Printf("checked %d operations on %d keys: %d illegal, %d undecided (search timed out)\n",
		ops, len(keys), illegal, unknown)
	if illegal > 0 {
		os.Exit(1)
	}
}

// printSmallest prints the shortest prefix of a key's history that is already not
// linearizable: the operations invoked before the n-th answer, where those still running at
// that moment count as unfinished (reads among them are left out). A later operation cannot
// take effect before that moment, so an illegal prefix proves the whole history illegal.
func printSmallest(key string, history []porcupine.Operation, timeout time.Duration) {
	sorted := append([]porcupine.Operation(nil), history...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Return < sorted[j].Return })
	prefix := func(n int) []porcupine.Operation {
		cut := sorted[n-1].Return
		out := make([]porcupine.Operation, 0, n)
		for _, op := range history {
			if op.Call > cut {
				continue
			}
			if op.Return > cut && op.Return != math.MaxInt64 {
				if op.Input.(input).Op == "get" {
					continue // a read that had not answered yet tells nothing
				}
				op.Output = output{Result: "unknown"}
				op.Return = math.MaxInt64
			}
			out = append(out, op)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Call < out[j].Call })
		return out
	}
	lo, hi := 1, len(sorted)
	for lo < hi {
		mid := (lo + hi) / 2
		if porcupine.CheckOperationsTimeout(model, prefix(mid), timeout) == porcupine.Illegal {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	window := prefix(lo)
	start := 0
	if len(window) > 40 {
		start = len(window) - 40
	}
	fmt.Printf("  key %s: shortest illegal prefix: %d operations; the last %d:\n", key, len(window), len(window)-start)
	base := window[0].Call
	for _, op := range window[start:] {
		ret := "never"
		if op.Return != math.MaxInt64 {
			ret = fmt.Sprintf("%.3fs", float64(op.Return-base)/1e9)
		}
		fmt.Printf("    client %2d  %.3fs .. %-8s %s\n", op.ClientId, float64(op.Call-base)/1e9, ret,
			model.DescribeOperation(op.Input, op.Output))
	}
}
