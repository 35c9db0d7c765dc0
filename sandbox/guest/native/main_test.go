package main

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	closeInheritedOnExec()
	setupBashEnv()
	watchChildren()
	os.Exit(m.Run())
}
