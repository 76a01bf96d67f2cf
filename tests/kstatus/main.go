// Command kstatus prints what sigs.k8s.io/cli-utils/pkg/kstatus/status (the library Flux, kpt,
// Config Sync and kubectl-based tooling use to decide readiness) computes for each object.
//
// Input: one Kubernetes object per line (JSON) on stdin.
// Output: one JSON line per object: {"name", "status", "message", "reason"}.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
	Reason  string `json:"reason"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		line := in.Bytes()
		if len(line) == 0 {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(line); err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: not an object: %v\n", err)
			os.Exit(2)
		}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %s: %v\n", u.GetName(), err)
			os.Exit(1)
		}
		v := verdict{Name: u.GetName(), Status: res.Status.String(), Message: res.Message}
		for _, c := range res.Conditions {
			v.Reason = c.Reason
		}
		if err := out.Encode(v); err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
		os.Exit(1)
	}
}
