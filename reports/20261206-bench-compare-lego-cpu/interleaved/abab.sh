SEL='(precision and train_step) or (framework and render and not compile) or (test_train_step and topk)'
for i in 1 2; do
  for side in old new; do
    if [ $side = old ]; then dir=/work/oldbench; else dir=/work/main; fi
    (cd $dir && .venv/bin/tensorf-bench bench --size full --select "$SEL" --out /tmp/ab_${side}_$i.json > /tmp/ab_${side}_$i.log 2>&1)
    echo "$side $i done $(date -u +%T)"
  done
done
